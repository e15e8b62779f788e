// Static rules of an SN17 comp 2 module (404-gen output specification, "Failure Semantics"):
// parsed with acorn, scopes from eslint-scope, walked with estraverse. No regular expressions.
import * as acorn from 'acorn';
import * as eslintScope from 'eslint-scope';
import estraverse from 'estraverse';

const STAGE = 'static_analysis';

// free identifiers a module may use besides its own variables
export const ALLOWED_GLOBALS = new Set([
  'Math', 'Number', 'String', 'Array', 'Object', 'Symbol', 'JSON', 'Map', 'Set', 'Boolean',
  'Error', 'TypeError', 'RangeError', 'SyntaxError', 'ReferenceError', 'EvalError', 'URIError', 'AggregateError',
  'parseInt', 'parseFloat', 'isFinite', 'isNaN', 'BigInt', 'ArrayBuffer', 'DataView',
  'Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array', 'Int32Array', 'Uint32Array',
  'Float32Array', 'Float64Array', 'BigInt64Array', 'BigUint64Array', 'undefined', 'NaN', 'Infinity',
]);

// refused wherever they appear, even as the name of a local variable
export const FORBIDDEN = new Set([
  'eval', 'Function', 'setTimeout', 'setInterval', 'setImmediate', 'queueMicrotask', 'clearTimeout',
  'clearInterval', 'clearImmediate', 'requestAnimationFrame',
  'fetch', 'XMLHttpRequest', 'WebSocket', 'EventSource', 'navigator', 'document', 'window', 'location',
  'localStorage', 'sessionStorage', 'indexedDB', 'HTMLCanvasElement', 'OffscreenCanvas', 'Image',
  'crypto', 'Date', 'performance', 'Proxy', 'Reflect', 'WeakRef', 'FinalizationRegistry',
  'Worker', 'SharedArrayBuffer', 'Atomics', 'process', 'module', 'exports', 'global', 'globalThis', 'self',
  'require', 'import',
]);

// THREE members a module may use: the specification's "Allowed Three.js APIs" as SN17-NOW.md sums up
// today's (geometries; Standard, Physical, Basic, Points and Line materials; DataTexture; math and curve
// classes; the listed objects; the listed constants)
export const THREE_ALLOWED = new Set([
  'BufferGeometry', 'BufferAttribute', 'InterleavedBuffer', 'InterleavedBufferAttribute', 'Float32BufferAttribute',
  'Uint8BufferAttribute', 'Uint16BufferAttribute', 'Uint32BufferAttribute', 'Int8BufferAttribute',
  'Int16BufferAttribute', 'Int32BufferAttribute',
  'BoxGeometry', 'SphereGeometry', 'CylinderGeometry', 'ConeGeometry', 'TorusGeometry', 'TorusKnotGeometry',
  'PlaneGeometry', 'CircleGeometry', 'RingGeometry', 'TetrahedronGeometry', 'OctahedronGeometry',
  'DodecahedronGeometry', 'IcosahedronGeometry', 'PolyhedronGeometry', 'ExtrudeGeometry', 'LatheGeometry',
  'ShapeGeometry', 'TubeGeometry', 'EdgesGeometry', 'WireframeGeometry', 'CapsuleGeometry',
  'MeshStandardMaterial', 'MeshPhysicalMaterial', 'MeshBasicMaterial', 'PointsMaterial', 'LineBasicMaterial',
  'LineDashedMaterial', 'DataTexture',
  'Vector2', 'Vector3', 'Vector4', 'Matrix3', 'Matrix4', 'Quaternion', 'Euler', 'Box3', 'Sphere', 'Plane', 'Ray',
  'Color', 'MathUtils',
  'Curve', 'CurvePath', 'Shape', 'Path', 'CatmullRomCurve3', 'CubicBezierCurve3', 'LineCurve3',
  'QuadraticBezierCurve3', 'CubicBezierCurve', 'QuadraticBezierCurve', 'LineCurve', 'SplineCurve',
  'EllipseCurve', 'ArcCurve',
  'Object3D', 'Group', 'Mesh', 'InstancedMesh', 'Line', 'LineSegments', 'Points',
  'SRGBColorSpace', 'LinearSRGBColorSpace', 'NoColorSpace', 'FrontSide', 'BackSide', 'DoubleSide',
  'NormalBlending', 'AdditiveBlending', 'SubtractiveBlending', 'MultiplyBlending', 'NoBlending',
  'NearestFilter', 'LinearFilter', 'NearestMipmapNearestFilter', 'LinearMipmapNearestFilter',
  'NearestMipmapLinearFilter', 'LinearMipmapLinearFilter', 'RepeatWrapping', 'ClampToEdgeWrapping',
  'MirroredRepeatWrapping', 'RGBAFormat', 'RGBFormat', 'RedFormat', 'UnsignedByteType', 'FloatType',
]);
const THREE_BLOCKED = {MathUtils: new Set(['seededRandom', 'generateUUID'])};
const GATED = new Set(['THREE', 'Math', 'Object', 'JSON', 'Reflect', 'Symbol']); // no computed access on these
const FORBIDDEN_PROPERTIES = new Set(['constructor', '__proto__', '__defineGetter__', '__defineSetter__',
  '__lookupGetter__', '__lookupSetter__']);

const fail = (rule, detail) => ({stage: STAGE, rule, detail});
const line = (node) => node.loc ? `line ${node.loc.start.line}` : 'line ?';
const propName = (member) => (!member.computed && member.property.type === 'Identifier') ? member.property.name : null;

export function parse(source) {
  try {
    return {ast: acorn.parse(source, {ecmaVersion: 'latest', sourceType: 'module', locations: true, ranges: true})};
  } catch (err) {
    return {failures: [fail('PARSE_ERROR', err.message)]};
  }
}

function structure(ast) {
  const exports = ast.body.filter((s) => s.type.startsWith('Export'));
  const defaults = exports.filter((s) => s.type === 'ExportDefaultDeclaration');
  if (defaults.length === 0) return [fail('MISSING_DEFAULT_EXPORT', 'no `export default` found')];
  const failures = [];
  if (exports.length > 1) failures.push(fail('MULTIPLE_TOP_LEVEL_EXPORTS', `${exports.length} top-level exports, expected exactly 1`));
  const decl = defaults[0].declaration;
  if (!['FunctionDeclaration', 'FunctionExpression', 'ArrowFunctionExpression'].includes(decl.type)) {
    failures.push(fail('MISSING_DEFAULT_EXPORT', `the default export is a ${decl.type}, not a function`));
  }
  return failures;
}

// the names of `callee`'s parameters when it is a function declared in this module
const FUNCTIONS = new Set(['FunctionExpression', 'ArrowFunctionExpression']);
function calleeParams(scope, callee) {
  if (callee.type !== 'Identifier') return null;
  for (let s = scope; s; s = s.upper) {
    const variable = s.set.get(callee.name);
    if (!variable) continue;
    const def = variable.defs[0];
    if (!def) return null;
    if (def.type === 'FunctionName') return def.node.params;
    if (def.type === 'Variable' && def.node.init && FUNCTIONS.has(def.node.init.type)) return def.node.init.params;
    return null;
  }
  return null;
}

export function analyze(ast, limits) {
  const failures = structure(ast);
  if (failures.some((f) => f.rule === 'MISSING_DEFAULT_EXPORT')) return failures;
  const scopeManager = eslintScope.analyze(ast, {ecmaVersion: 2022, sourceType: 'module'});
  const scopes = [];
  let scope = null;
  let literalBytes = 0;
  const seen = new Set(); // one failure per rule and detail

  const push = (rule, detail) => {
    const key = `${rule}:${detail}`;
    if (!seen.has(key)) { seen.add(key); failures.push(fail(rule, detail)); }
  };
  const resolve = (name) => {
    for (let s = scope; s; s = s.upper) { if (s.set.has(name)) return s.set.get(name); }
    return null;
  };

  estraverse.traverse(ast, {
    fallback: 'iteration',
    enter(node, parent) {
      const inner = scopeManager.acquire(node, true);
      if (inner) { scopes.push(scope); scope = inner; }
      switch (node.type) {
        case 'FunctionDeclaration': case 'FunctionExpression': case 'ArrowFunctionExpression':
          if (node.async) push('ASYNC_NOT_ALLOWED', `async function at ${line(node)}`);
          if (node.generator) push('ASYNC_NOT_ALLOWED', `generator function at ${line(node)}`);
          break;
        case 'AwaitExpression': push('ASYNC_NOT_ALLOWED', `await at ${line(node)}`); break;
        case 'ForOfStatement': if (node.await) push('ASYNC_NOT_ALLOWED', `for await at ${line(node)}`); break;
        case 'ImportDeclaration': push('FORBIDDEN_IDENTIFIER', `import statement at ${line(node)}`); break;
        case 'ImportExpression': push('FORBIDDEN_IDENTIFIER', `import() at ${line(node)}`); break;
        case 'MetaProperty': push('FORBIDDEN_IDENTIFIER', `${node.meta.name}.${node.property.name} at ${line(node)}`); break;
        case 'Literal':
          if (typeof node.value === 'string') literalBytes += Buffer.byteLength(node.value, 'utf8');
          else if (typeof node.value === 'number' || typeof node.value === 'bigint') literalBytes += node.raw.length;
          break;
        case 'TemplateElement': literalBytes += Buffer.byteLength(node.value.cooked ?? node.value.raw, 'utf8'); break;
        case 'MemberExpression': member(node, parent); break;
        case 'Identifier': identifier(node, parent); break;
        default: break;
      }
    },
    leave(node) {
      if (scopeManager.acquire(node, true)) scope = scopes.pop();
    },
  });

  function member(node) {
    const name = propName(node);
    const obj = node.object;
    if (name && FORBIDDEN_PROPERTIES.has(name)) push('FORBIDDEN_IDENTIFIER', `.${name} at ${line(node)}`);
    if (node.computed && obj.type === 'Identifier' && GATED.has(obj.name)) {
      push('COMPUTED_PROPERTY_ACCESS', `${obj.name}[...] at ${line(node)}`);
    }
    if (obj.type === 'Identifier' && obj.name === 'Math' && name === 'random') push('FORBIDDEN_IDENTIFIER', `Math.random at ${line(node)}`);
    if (obj.type === 'Identifier' && obj.name === 'THREE' && name && !THREE_ALLOWED.has(name)) {
      push('FORBIDDEN_THREE_API', `THREE.${name} at ${line(node)}`);
    }
    if (obj.type === 'MemberExpression' && obj.object.type === 'Identifier' && obj.object.name === 'THREE') {
      const owner = propName(obj);
      if (owner && THREE_BLOCKED[owner] && (node.computed || THREE_BLOCKED[owner].has(name))) {
        push('FORBIDDEN_THREE_API', `THREE.${owner}.${name ?? '[...]'} at ${line(node)}`);
      }
    }
  }

  function identifier(node, parent) {
    const name = node.name;
    // property names and keys are not references
    if (parent && (parent.type === 'MemberExpression' || parent.type === 'MetaProperty') && parent.property === node && !parent.computed) return;
    if (parent && (parent.type === 'Property' || parent.type === 'MethodDefinition' || parent.type === 'PropertyDefinition')
        && parent.key === node && !parent.computed && !(parent.shorthand && parent.value === node)) return;
    if (parent && ['LabeledStatement', 'BreakStatement', 'ContinueStatement'].includes(parent.type)) return;
    if (FORBIDDEN.has(name)) { push('FORBIDDEN_IDENTIFIER', `${name} at ${line(node)}`); return; }
    if (name === 'THREE') { three(node, parent); return; }
    const variable = resolve(name);
    if (variable && variable.defs.length > 0) return; // the module's own variable
    if (!ALLOWED_GLOBALS.has(name)) push('IDENTIFIER_NOT_ALLOWED', `${name} at ${line(node)}`);
  }

  // THREE exists only as a parameter named THREE; it may be read through `THREE.X` or passed on to a
  // helper of this module whose parameter in that place is named THREE; anything else aliases it
  function three(node, parent) {
    const variable = resolve('THREE');
    const defs = variable ? variable.defs : [];
    if (defs.length === 0) { push('THREE_AT_TOP_LEVEL', `THREE used outside a function that receives it, at ${line(node)}`); return; }
    if (defs.some((d) => d.type !== 'Parameter')) { push('FORBIDDEN_THREE_API', `THREE declared as a ${defs[0].type.toLowerCase()} at ${line(node)} (it may only be a parameter)`); return; }
    if (defs.some((d) => d.name === node)) return; // the parameter itself
    if (parent.type === 'MemberExpression' && parent.object === node && !parent.computed) return;
    if (parent.type === 'MemberExpression' && parent.object === node) return; // reported as computed access
    if (parent.type === 'CallExpression' && parent.arguments.includes(node)) {
      const params = calleeParams(scope, parent.callee);
      const at = parent.arguments.indexOf(node);
      if (params && params[at] && params[at].type === 'Identifier' && params[at].name === 'THREE') return;
      push('FORBIDDEN_THREE_API', `THREE passed at ${line(node)} to a function whose parameter there is not named THREE`);
      return;
    }
    push('FORBIDDEN_THREE_API', `THREE aliased or spread at ${line(node)} (${parent.type})`);
  }

  if (literalBytes > limits.literal_bytes) {
    push('LITERAL_BUDGET_EXCEEDED', `${literalBytes} bytes of literals (limit ${limits.literal_bytes})`);
  }
  return failures;
}

// the module as production runs it: `export default` becomes `return` inside new Function
export function functionBody(source, ast) {
  const node = ast.body.find((s) => s.type === 'ExportDefaultDeclaration');
  return source.slice(0, node.start) + 'return ' + source.slice(node.declaration.start, node.end) + source.slice(node.end);
}
