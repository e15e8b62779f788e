// The worker that runs one module: three r183 is imported first ("ready"), then the module's body
// (its `export default` turned into `return`, as production does) is evaluated and generate(THREE)
// called; the returned root is walked and measured here, then the result posted back.
import {parentPort} from 'node:worker_threads';
import {performance} from 'node:perf_hooks';
import {compileFunction} from 'node:vm';
import * as THREE from 'three';

// What a module could reach through the global object (a sloppy function's `this`, a computed name) and
// that no allowed module uses: the process (its builtin modules: files, network, children) and the network
// APIs. The checker runs with eval and the Function constructor off (--disallow-code-generation-from-
// strings, banned by the rules anyway) and under Node's permission model (no writes, reads of the checker
// only, no child processes): a module that evades the static analysis still reaches nothing outside.
for (const name of ['process', 'fetch', 'WebSocket', 'EventSource', 'navigator', 'Request', 'Response', 'Headers',
  'FormData', 'BroadcastChannel']) {
  delete globalThis[name];
}

const STAGE_RUN = 'execution';
const STAGE_POST = 'post_validation';
const fail = (stage, rule, detail) => ({stage, rule, detail});

function textureBytes(material, counted) {
  let bytes = 0;
  for (const mat of Array.isArray(material) ? material : [material]) {
    if (!mat) continue;
    for (const value of Object.values(mat)) {
      if (value && value.isDataTexture && !counted.has(value)) {
        counted.add(value);
        bytes += value.image?.data?.byteLength ?? 0;
      }
    }
  }
  return bytes;
}

export function measure(root, limits) {
  const failures = [];
  if (root == null || !root.isObject3D) {
    return {failures: [fail(STAGE_POST, 'INVALID_RETURN_TYPE', root == null ? `generate returned ${root}` : `generate returned a ${typeof root}, not an Object3D`)]};
  }
  if (!(root.isGroup || root.isMesh || root.isLineSegments || root.isPoints)) {
    return {failures: [fail(STAGE_POST, 'INVALID_RETURN_TYPE', `generate returned a ${root.type}: expected a Group, Mesh, LineSegments or Points`)]};
  }
  if (!root.isGroup) { const group = new THREE.Group(); group.add(root); root = group; }
  const visited = new Set(), counted = new Set();
  const m = {vertices: 0, draw_calls: 0, depth: 0, instances: 0, texture_bytes: 0};
  const stack = [[root, 0]];
  while (stack.length) {
    const [node, depth] = stack.pop();
    if (visited.has(node)) return {failures: [fail(STAGE_POST, 'CYCLE_DETECTED', 'the scene graph contains a cycle')], metrics: m};
    if (depth > limits.depth) return {failures: [fail(STAGE_POST, 'DEPTH_LIMIT_EXCEEDED', `depth over ${limits.depth}`)], metrics: m};
    visited.add(node);
    m.depth = Math.max(m.depth, depth);
    if (node.isMesh || node.isLine || node.isPoints) {
      m.draw_calls += 1;
      m.vertices += node.geometry?.attributes?.position?.count ?? 0;
      if (node.isInstancedMesh) m.instances += node.count ?? 0;
      m.texture_bytes += textureBytes(node.material, counted);
    }
    for (const child of node.children ?? []) stack.push([child, depth + 1]);
  }
  const box = new THREE.Box3().setFromObject(root);
  const corners = [...box.min.toArray(), ...box.max.toArray()];
  if (corners.some(Number.isNaN)) {  // a NaN coordinate makes every comparison false: no box would fail
    failures.push(fail(STAGE_POST, 'BOUNDING_BOX_OUT_OF_RANGE', 'the bounding box is not finite (a NaN coordinate)'));
  } else if (box.isEmpty()) failures.push(fail(STAGE_POST, 'EMPTY_SCENE', 'Box3.setFromObject(root) is empty'));
  else {
    m.bbox = {min: box.min.toArray(), max: box.max.toArray()};
    const out = ['x', 'y', 'z'].filter((a) => box.min[a] < -limits.bound || box.max[a] > limits.bound)
      .map((a) => `${a} [${box.min[a].toFixed(4)}, ${box.max[a].toFixed(4)}]`);
    if (out.length) failures.push(fail(STAGE_POST, 'BOUNDING_BOX_OUT_OF_RANGE', `outside [-${limits.bound}, ${limits.bound}]: ${out.join(', ')}`));
  }
  for (const [key, rule, name] of [['vertices', 'VERTEX_LIMIT_EXCEEDED', 'vertices'], ['draw_calls', 'DRAW_CALL_LIMIT_EXCEEDED', 'draw calls'],
    ['instances', 'INSTANCE_LIMIT_EXCEEDED', 'instances'], ['texture_bytes', 'TEXTURE_DATA_EXCEEDED', 'DataTexture bytes']]) {
    if (m[key] > limits[key]) failures.push(fail(STAGE_POST, rule, `${m[key]} ${name} (limit ${limits[key]})`));
  }
  return {failures, metrics: m};
}

parentPort.on('message', ({body, limits}) => {
  const started = performance.now();
  let root;
  try {
    const generate = compileFunction(body)();  // as production's new Function(body), which is off here
    if (typeof generate !== 'function') {
      parentPort.postMessage({failures: [fail(STAGE_RUN, 'MISSING_DEFAULT_EXPORT', 'the default export is not a function')]});
      return;
    }
    root = generate(THREE);
  } catch (err) {
    if (err instanceof RangeError && String(err.message).includes('allocation failed')) {  // an ArrayBuffer past
      parentPort.postMessage({failures: [fail(STAGE_RUN, 'HEAP_EXCEEDED', `memory outside the JS heap went over the checker's ${limits.process_mb} MB limit (${err.message})`)]});
      return;  // the process limit (ArrayBuffers live outside V8's heap and its 256 MB cap)
    }
    parentPort.postMessage({failures: [fail(STAGE_RUN, 'EXECUTION_THREW', `${err?.name ?? 'Error'}: ${err?.message ?? err}`)]});
    return;
  }
  const seconds = (performance.now() - started) / 1000;
  if (root && typeof root.then === 'function') {
    parentPort.postMessage({failures: [fail(STAGE_RUN, 'ASYNC_NOT_ALLOWED', 'generate returned a Promise')]});
    return;
  }
  const result = measure(root, limits);
  if (seconds > limits.time_s) result.failures.unshift(fail(STAGE_RUN, 'TIMEOUT_EXCEEDED', `module load and generate() took ${seconds.toFixed(2)} s (limit ${limits.time_s} s)`));
  result.metrics = {...(result.metrics ?? {}), seconds: Number(seconds.toFixed(4))};
  parentPort.postMessage(result);
});
parentPort.postMessage('ready');
