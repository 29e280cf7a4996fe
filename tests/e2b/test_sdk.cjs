// E2B's official JavaScript SDK (@e2b/code-interpreter from npm, unmodified)
// against `cellbox serve`, in the SDK's debug mode (E2B_DEBUG=true).
//
// Usage: NODE_PATH=<its node_modules> node test_sdk.cjs   (with `cellbox serve` running)
// Prints one line per check and `N passed, M failed`; exits 1 if anything failed.
process.env.E2B_DEBUG = 'true'
const { Sandbox } = require('@e2b/code-interpreter')

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

async function main() {
  const sbx = await Sandbox.create()
  await sbx.runCode('js_x = 1')
  let e = await sbx.runCode('js_x += 1; js_x')
  check('state persists between cells', e.text === '2', e.text)

  const out = []
  e = await sbx.runCode("print('out'); 6 * 7", { onStdout: (m) => out.push(m.line) })
  check('onStdout and the result', out.join('') === 'out\n' && e.text === '42', [out, e.text])

  e = await sbx.runCode('undefined_name')
  check('a NameError with its traceback',
    e.error?.name === 'NameError' && e.error.traceback.includes('undefined_name'), e.error)

  e = await sbx.runCode("const who = 'node'\nawait Promise.resolve(who)", { language: 'js' })
  check("runCode in JavaScript, a string result as itself", e.text === 'node', e.text)
  e = await sbx.runCode('const n: number = 2; n * 21', { language: 'ts' })
  check('runCode in TypeScript', e.text === '42', e.text)
  const ctx = await sbx.createCodeContext({ language: 'js', cwd: '/tmp' })
  e = await sbx.runCode('process.cwd()', { context: ctx })
  check('a JavaScript context of its own', ctx.language === 'javascript' && e.text === '/tmp', [ctx, e.text])

  await sbx.files.write('js/hello.txt', 'hi from js')
  check('files.write then read', (await sbx.files.read('js/hello.txt')) === 'hi from js')
  const entries = (await sbx.files.list('js')).map((x) => [x.name, x.type, x.size])
  check('files.list', JSON.stringify(entries) === JSON.stringify([['hello.txt', 'file', 10]]), entries)
  await sbx.files.remove('js')
  check('files.remove', !(await sbx.files.exists('js')))

  const r = await sbx.commands.run('echo hi; echo oops >&2')
  check('commands.run', r.stdout === 'hi\n' && r.stderr === 'oops\n' && r.exitCode === 0, r)
  try {
    await sbx.commands.run('exit 4')
    check('a failing command throws CommandExitError', false, 'no exception')
  } catch (err) {
    check('a failing command throws CommandExitError', err.exitCode === 4, String(err))
  }

  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed ? 1 : 0)
}

main().catch((err) => {
  console.log(`FAIL unexpected exception: ${err.stack}`)
  process.exit(1)
})
