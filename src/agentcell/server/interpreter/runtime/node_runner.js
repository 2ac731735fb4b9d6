// agentcell's JavaScript kernel: `node -e <this file>` inside a sandbox. Requests arrive as JSON
// lines on stdin ({id, code, env}); answers leave as frames "\x1e<json>\n" on stdout shaped like
// Jupyter messages (stream, execute_result, error, execute_reply), and each execution ends with
// "\x1e<id>\n" on stderr. Anything else on stdout/stderr (a child process's output) is raw text.
// Code runs in this process's global context, so top-level let/const/function survive calls.
(() => {
  'use strict';
  const vm = require('vm');
  const util = require('util');
  const { Console } = require('console');
  const { Writable } = require('stream');
  const RS = '\x1e';
  const MAX_TEXT = 1 << 20;
  const rawOut = process.stdout.write.bind(process.stdout);
  const rawErr = process.stderr.write.bind(process.stderr);
  let current = null;
  let count = 0;
  let onInterrupt = null;

  const send = (msgType, content) => {
    rawOut(RS + JSON.stringify({ msg_type: msgType, id: current, content }) + '\n');
  };
  const clip = (text) => (text.length > MAX_TEXT ? text.slice(0, MAX_TEXT) + '\n[truncated]' : text);
  const writer = (name) => (chunk, encoding, callback) => {
    send('stream', { name, text: clip(String(chunk)) });
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') done();
    return true;
  };
  const sink = (name) => new Writable({ write: (chunk, enc, cb) => writer(name)(chunk, cb) });
  process.stdout.write = writer('stdout');
  process.stderr.write = writer('stderr');
  globalThis.console = new Console({ stdout: sink('stdout'), stderr: sink('stderr') });
  globalThis.require = require;

  const errorContent = (err) => {
    const isError = err instanceof Error;
    return {
      ename: isError ? err.name : 'Error',
      evalue: isError ? err.message : util.inspect(err),
      traceback: [clip(isError && err.stack ? err.stack : util.inspect(err))],
    };
  };
  const display = (value) => ({ 'text/plain': clip(util.inspect(value, { depth: 4, breakLength: 100 })) });
  const interruptible = (promise) =>
    new Promise((resolve, reject) => {
      onInterrupt = () => reject(Object.assign(new Error('interrupted'), { name: 'Interrupted' }));
      promise.then(resolve, reject);
    }).finally(() => {
      onInterrupt = null;
    });

  process.on('SIGINT', () => onInterrupt && onInterrupt());
  process.on('uncaughtException', (err) => current && send('error', errorContent(err)));
  process.on('unhandledRejection', (err) => current && send('error', errorContent(err)));

  const execute = async (request) => {
    current = request.id;
    count += 1;
    const saved = {};
    for (const [name, value] of Object.entries(request.env || {})) {
      saved[name] = process.env[name];
      process.env[name] = value;
    }
    let status = 'ok';
    try {
      const options = { filename: `<cell ${count}>`, breakOnSigint: true };
      let value = vm.runInThisContext(request.code, options);
      if (value && typeof value.then === 'function') value = await interruptible(value);
      if (value !== undefined) send('execute_result', { execution_count: count, data: display(value) });
    } catch (err) {
      status = 'error';
      send('error', errorContent(err));
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    send('execute_reply', { status, execution_count: count });
    rawErr(RS + request.id + '\n');
    current = null;
  };

  const queue = [];
  let running = false;
  let buffer = '';
  const pump = async () => {
    if (running) return;
    running = true;
    while (queue.length) await execute(queue.shift());
    running = false;
  };
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (data) => {
    buffer += data;
    let end;
    while ((end = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line) queue.push(JSON.parse(line));
    }
    pump();
  });
  process.stdin.on('end', () => process.exit(0));
  rawOut(RS + JSON.stringify({ msg_type: 'ready', id: null, content: {} }) + '\n');
  rawErr(RS + 'ready\n');
})();
