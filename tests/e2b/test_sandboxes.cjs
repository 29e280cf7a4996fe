// E2B's official JavaScript SDK (@e2b/code-interpreter from npm, unmodified)
// against `cellbox serve` as E2B's cloud (not debug mode): several sandboxes
// through the control plane and the sandbox traffic on one port; a fork and a
// snapshot.
//
// Usage: E2B_API_URL=http://localhost:49980 E2B_SANDBOX_URL=http://localhost:49980 \
//        E2B_API_KEY=... NODE_PATH=<its node_modules> node test_sandboxes.cjs
// Prints one line per check and `N passed, M failed`; exits 1 if anything failed.
delete process.env.E2B_DEBUG
const { Sandbox } = require('@e2b/code-interpreter')

const run = Math.random().toString(36).slice(2, 10)
let passed = 0
let failed = 0
function check(name, condition, detail = '') {
  if (condition) {
    passed += 1
    console.log(`ok   ${name}`)
  } else {
    failed += 1
    console.log(`FAIL ${name}: ${JSON.stringify(detail)}`)
  }
}

async function ids(query = {}) {
  const paginator = Sandbox.list({ query: { ...query, metadata: { run, ...(query.metadata || {}) } } })
  const found = []
  while (paginator.hasNext) {
    found.push(...(await paginator.nextItems()).map((s) => s.sandboxId))
  }
  return found.sort()
}

async function main() {
  const [a, b] = await Promise.all([
    Sandbox.create({ metadata: { run, who: 'a' } }),
    Sandbox.create({ metadata: { run, who: 'b' } }),
  ])
  await Promise.all([a.runCode("x = 'a'"), b.runCode("x = 'b'")])
  const [xa, xb] = await Promise.all([a.runCode('x'), b.runCode('x')])
  check('two sandboxes at once, each with its own state', xa.text === 'a' && xb.text === 'b', [xa.text, xb.text])
  check('list with a metadata filter', JSON.stringify(await ids()) === JSON.stringify([a.sandboxId, b.sandboxId].sort()))
  check('list by two pairs', JSON.stringify(await ids({ metadata: { who: 'b' } })) === JSON.stringify([b.sandboxId]))
  const info = await a.getInfo()
  check('getInfo', info.sandboxId === a.sandboxId && info.state === 'running' && info.metadata.who === 'a', info)

  await a.files.write('/home/user/note.txt', 'from js')
  check('files in one sandbox only', (await a.files.exists('/home/user/note.txt')) && !(await b.files.exists('/home/user/note.txt')))
  await a.files.makeDir('/home/user/watched')
  const events = []
  const watcher = await a.files.watchDir('/home/user/watched', (event) => events.push([event.name, event.type]), { recursive: true })
  await a.files.write('/home/user/watched/w.txt', 'x')
  await a.files.remove('/home/user/watched/w.txt')
  for (let i = 0; i < 50 && !events.some(([n, t]) => n === 'w.txt' && t === 'remove'); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await watcher.stop()
  check('watchDir streams creations and removals', events.some(([n, t]) => n === 'w.txt' && t === 'create')
    && events.some(([n, t]) => n === 'w.txt' && t === 'remove'), events)

  const metrics = await a.getMetrics()
  check('getMetrics', metrics.length >= 1 && metrics[0].memTotal > 0 && metrics[0].cpuCount >= 1, metrics)

  check('pause', (await a.pause()) === true && (await a.getInfo()).state === 'paused')
  check('list by state', (await ids({ state: ['paused'] })).includes(a.sandboxId))
  const again = await Sandbox.connect(a.sandboxId)
  check('connect resumes it with its variables', (await again.runCode('x')).text === 'a' && (await again.getInfo()).state === 'running')

  const short = await Sandbox.create({ timeoutMs: 2000, metadata: { run, who: 'short' } })
  await short.setTimeout(60000)
  await new Promise((resolve) => setTimeout(resolve, 3000))
  check('setTimeout keeps it past its first timeout', (await short.runCode('1 + 1')).text === '2')

  const [fork] = await a.fork({ timeoutMs: 60000 })
  check('fork', fork instanceof Sandbox && (await fork.runCode('x')).text === 'a'
    && (await fork.files.read('/home/user/note.txt')) === 'from js', fork)
  await fork.runCode("x = 'fork'")
  check('a fork goes its own way', (await a.runCode('x')).text === 'a')
  const snapshot = await a.createSnapshot({ name: `js-${run}` })
  const fromSnapshot = await Sandbox.create(snapshot.snapshotId, { metadata: { run, who: 'from-snapshot' } })
  check('createSnapshot, then a sandbox from it', snapshot.snapshotId === `js-${run}:default`
    && (await fromSnapshot.runCode('x')).text === 'a', snapshot)
  check('deleteSnapshot', (await Sandbox.deleteSnapshot(snapshot.snapshotId)) === true)
  await Promise.all([fork.kill(), fromSnapshot.kill()])

  // Network: none unless asked for (allowInternetAccess, network.denyOut);
  // "the outside" is the Rust test's servers (tests/network_rig.rs).
  const server = process.env.CELLBOX_TEST_ALLOWED
  const probe = `import socket\ntry:\n    socket.create_connection(('${server}', ${process.env.CELLBOX_TEST_PORT}), 5).close(); r = 'connected'\n`
    + 'except OSError as e:\n    r = type(e).__name__\nr'
  const offline = (await a.runCode(probe)).text
  check('network: none by default', offline !== undefined && offline !== 'connected', offline)
  const online = await Sandbox.create({ allowInternetAccess: true, metadata: { run, who: 'online' } })
  check('network: allowInternetAccess reaches the outside', (await online.runCode(probe)).text === 'connected')
  const denied = await Sandbox.create({
    allowInternetAccess: true, network: { denyOut: [`${server}/32`] }, metadata: { run, who: 'denied' },
  })
  const refused = (await denied.runCode(probe)).text
  check('network: denyOut refuses an address', refused === 'ConnectionRefusedError', refused)
  // A custom template (tests/e2b/template/e2b.Dockerfile, built before the server started).
  const custom = await Sandbox.create('sdk-test', { metadata: { run, who: 'custom' } })
  const built = await custom.runCode("import os; (os.getcwd(), os.environ.get('FROM_TEMPLATE'), open('/opt/built.txt').read())")
  check('a sandbox from a built template has its files, ENV and WORKDIR',
    built.text === "('/home/user/project', 'yes', 'built\\n')", built.text)
  await Promise.all([online.kill(), denied.kill(), custom.kill()])

  await b.kill()
  check('kill', !(await ids()).includes(b.sandboxId) && !(await b.isRunning()))
  await Promise.all([a.kill(), short.kill()])
  check('all gone', (await ids()).length === 0)
}

main()
  .catch((e) => {
    failed += 1
    console.log(`FAIL unexpected error: ${e && e.stack}`)
  })
  .finally(() => {
    console.log(`${passed} passed, ${failed} failed`)
    process.exit(failed ? 1 : 0)
  })
