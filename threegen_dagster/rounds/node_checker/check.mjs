// node check.mjs MODULE.js [LIMITS_JSON]: checks one SN17 comp 2 module against the published rules and
// prints one JSON line {ok, failures: [{stage, rule, detail}], metrics, three}. The exit status is 0
// whether or not the module passes; anything else means the checker itself failed.
import {readFileSync, statSync} from 'node:fs';
import {Worker} from 'node:worker_threads';
import {analyze, functionBody, parse} from './static.mjs';

const DEFAULTS = {file_bytes: 1048576, literal_bytes: 51200, vertices: 250000, draw_calls: 200, depth: 32,
  instances: 50000, texture_bytes: 4194304, time_s: 5, heap_mb: 256, bound: 0.5, process_mb: 3072};
const THREE_VERSION = JSON.parse(readFileSync(new URL('./node_modules/three/package.json', import.meta.url))).version;

function done(failures, metrics = {}) {
  process.stdout.write(JSON.stringify({ok: failures.length === 0, failures, metrics, three: THREE_VERSION}) + '\n');
  process.exit(0);
}

function run(body, limits) {
  return new Promise((resolve) => {
    const worker = new Worker(new URL('./runtime.mjs', import.meta.url), {
      resourceLimits: {maxOldGenerationSizeMb: limits.heap_mb, maxYoungGenerationSizeMb: 32}, stdout: true, stderr: true});
    let timer = null;
    const finish = (result) => { clearTimeout(timer); worker.terminate(); resolve(result); };
    worker.on('message', (message) => {
      if (message === 'ready') {  // three is loaded: the clock starts with the module
        timer = setTimeout(() => finish({failures: [{stage: 'execution', rule: 'TIMEOUT_EXCEEDED',
          detail: `module load and generate() still running after ${limits.time_s} s: stopped`}]}), limits.time_s * 1000 + 250);
        worker.postMessage({body, limits});
      } else finish(message);
    });
    worker.on('error', (err) => finish({failures: [err.code === 'ERR_WORKER_OUT_OF_MEMORY'
      ? {stage: 'execution', rule: 'HEAP_EXCEEDED', detail: `the JS heap went over ${limits.heap_mb} MB: stopped`}
      : {stage: 'execution', rule: 'EXECUTION_THREW', detail: `${err.name}: ${err.message}`}]}));
    worker.on('exit', (code) => finish({failures: [{stage: 'execution', rule: 'EXECUTION_THREW', detail: `the module's worker exited (${code})`}]}));
  });
}

const [path, given] = process.argv.slice(2);
const limits = {...DEFAULTS, ...(given ? JSON.parse(given) : {})};
const size = statSync(path).size;
if (size > limits.file_bytes) done([{stage: 'static_analysis', rule: 'FILE_SIZE_EXCEEDED', detail: `${size} bytes (limit ${limits.file_bytes})`}]);
let source;
try {
  source = new TextDecoder('utf-8', {fatal: true}).decode(readFileSync(path));
} catch (err) {
  done([{stage: 'static_analysis', rule: 'PARSE_ERROR', detail: `the file is not UTF-8 text (${err.message})`}]);
}
const {ast, failures: parseFailures} = parse(source);
if (parseFailures) done(parseFailures);
const staticFailures = analyze(ast, limits);
if (staticFailures.length) done(staticFailures);
const result = await run(functionBody(source, ast), limits);
done(result.failures, result.metrics);
