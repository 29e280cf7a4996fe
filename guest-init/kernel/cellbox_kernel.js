// cellbox kernel driver for JavaScript and TypeScript: runs notebook cells in
// one Node.js REPL context inside the guest.
//
// guest-init starts one process per context as `node cellbox_kernel.js LANGUAGE`
// (javascript or typescript), with the protocol of cellbox_kernel.py:
//   fd 3  requests, one JSON object per line: {"code": "...", "env": {"K": "V"}}
//   fd 4  events,   one JSON object per line: ready, stdout, stderr, result, error, end
//   fd 1/2 raw output the parent forwards (process.stdout.write, child processes).
// console.* output comes back as events. Every request ends with exactly one
// {"type": "end", "execution_count": N}. SIGINT (the parent's timeout) stops the
// running cell: a synchronous loop is broken off, an awaited promise abandoned.
// EOF on fd 3 ends the process.
//
// Cells run through Node's own REPL evaluator: variables, functions and
// imports persist between cells, top-level `await` works, and the value of a
// cell's last expression is its result. Static `import` lines become dynamic
// imports (the REPL runs scripts, not modules); `npm:` specifiers (Deno's) are
// read as plain package names. TypeScript is turned into JavaScript by
// Debian's `typescript` package, loaded only by TypeScript contexts.
'use strict';

const fs = require('fs');
const repl = require('repl');
const util = require('util');
const { Console } = require('console');
const { PassThrough, Writable } = require('stream');

const LANGUAGE = process.argv[2] || 'javascript';
const CHUNK = 1 << 16; // at most this many characters of stream text per event
// The protocol's pipes, reopened close-on-exec (Node cannot set the flag on
// inherited descriptors): a child process must not hold or write them.
const [REQUEST_FD, EVENT_FD] = [[3, 'r'], [4, 'a']].map(([fd, mode]) => {
  try {
    const copy = fs.openSync(`/proc/self/fd/${fd}`, mode);
    fs.closeSync(fd);
    return copy;
  } catch {
    return fd;
  }
});

function writeAll(fd, data) {
  while (data.length) {
    try {
      data = data.subarray(fs.writeSync(fd, data));
    } catch (error) {
      if (error.code !== 'EAGAIN') process.exit(3); // the parent is gone
    }
  }
}

function emit(event) {
  let line;
  try {
    line = JSON.stringify(event);
  } catch (error) {
    line = JSON.stringify({ type: 'stderr', text: `cellbox: an event was lost: ${error}\n` });
  }
  writeAll(EVENT_FD, Buffer.from(line + '\n'));
}

// console.log and friends: text events, in order with the results (a write
// completes at once, so the stream never queues).
function eventStream(type) {
  return new Writable({
    decodeStrings: false,
    write(chunk, _encoding, done) {
      const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
      for (let start = 0; start < text.length; start += CHUNK) {
        emit({ type, text: text.slice(start, start + CHUNK) });
      }
      done();
    },
  });
}

// ---- rich results ---------------------------------------------------------------------
const MIME = {
  'text/plain': 'text', 'text/html': 'html', 'text/markdown': 'markdown',
  'text/latex': 'latex', 'image/png': 'png', 'image/jpeg': 'jpeg',
  'image/svg+xml': 'svg', 'application/pdf': 'pdf', 'application/json': 'json',
  'application/javascript': 'javascript',
};
// Deno's convention: an object with this method shows itself as a MIME bundle.
const DISPLAY = Symbol.for('Jupyter.display');

function inspect(value) {
  return typeof value === 'string'
    ? value // E2B shows a string result as itself, unquoted
    : util.inspect(value, { depth: 6, maxArrayLength: 200, maxStringLength: 100000 });
}

function resultEvent(value, main) {
  const event = { type: 'result', is_main_result: main };
  const custom = value !== null && value !== undefined && typeof value[DISPLAY] === 'function'
    ? value[DISPLAY]()
    : null;
  if (custom && typeof custom === 'object') {
    const extra = {};
    for (const [mime, data] of Object.entries(custom)) {
      const key = MIME[mime];
      if (key === 'json') event.json = data;
      else if (key) event[key] = typeof data === 'string' ? data : inspect(data);
      else extra[mime] = data;
    }
    if (Object.keys(extra).length) event.extra = extra;
    if (!event.text) event.text = inspect(value);
  } else {
    event.text = inspect(value);
  }
  return event;
}

// A stack without the frames below the cell (the REPL's, the domain's, this file's).
function userFrames(stack) {
  const lines = stack.split('\n');
  const internal = lines.findIndex((line) =>
    /^\s+at .*(\(node:(vm|repl|domain|internal)|cellbox_kernel\.js|sigintHandlersWrap)/.test(line));
  return (internal < 0 ? lines : lines.slice(0, internal)).join('\n');
}

function errorEvent(error) {
  if (error instanceof repl.Recoverable) error = error.err; // incomplete input
  if (error?.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') error.name = 'Interrupted';
  if (error instanceof Error || (error && typeof error.stack === 'string')) {
    return {
      type: 'error',
      name: String(error.name || 'Error'),
      value: String(error.message ?? ''),
      traceback: userFrames(String(error.stack || `${error.name}: ${error.message}`)),
    };
  }
  // `throw 42` and the like: what was thrown, shown.
  return { type: 'error', name: 'Error', value: inspect(error), traceback: `Uncaught ${inspect(error)}` };
}

// ---- turning a cell into something the REPL evaluates ----------------------------------
let typescript = null;

function toJavaScript(code) {
  if (LANGUAGE !== 'typescript') return code;
  typescript ??= require('typescript');
  return typescript.transpileModule(code, {
    compilerOptions: {
      target: typescript.ScriptTarget.ES2022,
      module: typescript.ModuleKind.ESNext,
      // Keep every import: an unused one may be there for its effects.
      preserveValueImports: true,
      isolatedModules: true,
    },
  }).outputText.replace(/^export \{\};?\s*$/m, '');
}

// `import a, { b as c } from 'm'` → `var { default: a, b: c } = await import('m')`.
function importsToDynamic(code) {
  const specifier = (quoted) => {
    const name = quoted.slice(1, -1).replace(/^npm:/, '').replace(/^(@?[^@/]+(?:\/[^@/]+)?)@[^/]+/, '$1');
    return JSON.stringify(name);
  };
  return code.replace(
    /^([ \t]*)import\s+(?:([\w$]+)\s*,?\s*)?(?:\*\s+as\s+([\w$]+)|\{([^}]*)\})?\s*(?:from\s*)?(['"][^'"\n]+['"])\s*;?/gm,
    (whole, indent, name, namespace, named, quoted) => {
      const module = `await import(${specifier(quoted)})`;
      if (namespace) {
        return name
          ? `${indent}var ${namespace} = ${module}, ${name} = ${namespace}.default;`
          : `${indent}var ${namespace} = ${module};`;
      }
      const parts = [];
      if (name) parts.push(`default: ${name}`);
      for (const part of (named || '').split(',').map((p) => p.trim()).filter(Boolean)) {
        const [imported, local] = part.split(/\s+as\s+/);
        if (!imported.startsWith('type ')) parts.push(local ? `${imported}: ${local}` : imported);
      }
      if (!parts.length) return `${indent}${module};`;
      return `${indent}var { ${parts.join(', ')} } = ${module};`;
    },
  );
}

// ---- the REPL and its context -----------------------------------------------------------
// The REPL runs cells in this domain and sends their exceptions to it (not to
// eval's callback); so do timers and promises a cell started.
const cellErrors = require('domain').create();
let endCell = null; // set while a cell runs: ends it with an error or a value
cellErrors.on('error', (error) => {
  if (endCell) endCell({ error });
  else emit({ type: 'stderr', text: `Uncaught ${error && error.stack ? error.stack : inspect(error)}\n` });
});
const output = new PassThrough();
output.resume(); // the REPL's own echo is not wanted
const server = repl.start({
  input: new PassThrough(),
  output,
  terminal: false,
  prompt: '',
  useGlobal: false,
  breakEvalOnSigint: true,
  preview: false,
  domain: cellErrors,
});
server.context.console = new Console({ stdout: eventStream('stdout'), stderr: eventStream('stderr') });
// Jupyter's display(value): a result that is not the cell's last value.
server.context.display = (value) => emit(resultEvent(value, false));

// SIGINT (the parent's interrupt): while a cell's synchronous code runs, V8
// breaks it off (the REPL's breakEvalOnSigint; Node's watchdog works only with
// no SIGINT listener, so the one below is removed meanwhile); while the cell
// awaits, or between cells, this listener ends the cell or does nothing.
function onInterrupt() {
  const interrupted = new Error('the cell was interrupted');
  interrupted.name = 'Interrupted';
  if (endCell) endCell({ error: interrupted }); // an awaited promise is abandoned
}
process.on('SIGINT', onInterrupt);

// Runs a cell: its value, or the error it threw, or an interrupt.
function evaluate(code) {
  return new Promise((resolve) => {
    endCell = resolve;
    process.removeListener('SIGINT', onInterrupt);
    try {
      server.eval(code, server.context, 'cell', (error, value) => resolve({ error, value }));
    } finally {
      process.on('SIGINT', onInterrupt);
    }
  });
}

// ---- serving requests -------------------------------------------------------------------
let executionCount = 1;

async function serve(line) {
  const count = executionCount;
  const saved = {};
  try {
    const request = JSON.parse(line);
    if (typeof request?.code !== 'string') throw new TypeError('a request needs a "code" string');
    for (const [key, value] of Object.entries(request.env || {})) {
      saved[key] = process.env[key];
      process.env[key] = String(value);
    }
    executionCount += 1;
    const code = importsToDynamic(toJavaScript(request.code));
    const { error, value } = await evaluate(code);
    if (error) emit(errorEvent(error));
    else if (value !== undefined) emit(resultEvent(value, true));
  } catch (error) {
    emit(errorEvent(error));
  } finally {
    endCell = null;
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    emit({ type: 'end', execution_count: count });
  }
}

// Requests, one at a time, in order.
let pending = Promise.resolve();
let buffered = '';
const requests = fs.createReadStream(null, { fd: REQUEST_FD, encoding: 'utf8' });
requests.on('data', (text) => {
  buffered += text;
  let newline;
  while ((newline = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    if (line.trim()) pending = pending.then(() => serve(line));
  }
});
requests.on('end', () => pending.then(() => process.exit(0)));
requests.on('error', () => process.exit(0));

// An error or rejection outside the cells' domain must not end the kernel and its state.
process.on('uncaughtException', (error) => cellErrors.emit('error', error));
process.on('unhandledRejection', (reason) => cellErrors.emit('error', reason));

emit({ type: 'ready' });
