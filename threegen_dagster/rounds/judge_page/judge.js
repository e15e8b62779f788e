// Judge-style renders: SN17's render service (render-service-js, render-pool.js renderInPage) redone with the
// same three r183, camera, lights and tone mapping, for a comp 2 module (generate(THREE)) or a GLB.
// Python (threegen_dagster/rounds/render.py) serves this page, the vendored three and the output on a virtual
// origin and calls window.judgeRender(params) once per view set; it returns PNG data URLs.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

// the judges' seeded Math.random (Mulberry32) while generate() runs, so three's UUIDs stay deterministic
function seededRandom() {
  let seed = 0x12345678;
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function loadObject(kind, url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch the output: HTTP ${response.status}`);
  if (kind === "glb") {
    const gltf = await new GLTFLoader().parseAsync(await response.arrayBuffer(), "");
    return gltf.scene;
  }
  const blobUrl = URL.createObjectURL(new Blob([await response.text()], { type: "application/javascript" }));
  let mod;
  try {
    mod = await import(blobUrl);
  } finally {
    URL.revokeObjectURL(blobUrl);
  }
  if (typeof mod.default !== "function") throw new Error("default export is not a function");
  const original = Math.random;
  Math.random = seededRandom();
  let root;
  try {
    root = mod.default(THREE);
  } finally {
    Math.random = original;
  }
  if (!root || !root.isObject3D) throw new Error("generate() did not return an Object3D");
  return root;
}

// One renderer per (size, rig), kept for the page's life: the studio rig's environment map (PMREM) is the same for
// every output and takes seconds to build in software WebGL.
const renderers = new Map();
function rendererFor(size, lighting) {
  const key = `${size}/${lighting}`;
  if (!renderers.has(key)) {
    const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true, alpha: true });
    renderer.setSize(size, size);
    renderer.setPixelRatio(1);
    renderer.toneMapping = THREE.ACESFilmicToneMapping;
    renderer.toneMappingExposure = 1.0;
    renderer.outputColorSpace = THREE.SRGBColorSpace;
    let environment = null;
    if (lighting === "studio") {  // a neutral environment map
      const pmrem = new THREE.PMREMGenerator(renderer);
      const envScene = new THREE.Scene();
      envScene.add(new THREE.HemisphereLight(0xffffff, 0x444444, 1.0));
      environment = pmrem.fromScene(envScene, 0.04).texture;
      pmrem.dispose();
    }
    renderers.set(key, { renderer, environment });
  }
  return renderers.get(key);
}

function lightScene(scene, lighting, environment) {
  if (lighting === "follow") {  // white and gray views: ambient + a key light that follows the camera
    scene.add(new THREE.AmbientLight(0xffffff, 0.4));
    const follow = new THREE.DirectionalLight(0xffffff, 1.5);
    scene.add(follow);
    return follow;
  }
  // grid: the fixed studio rig and the environment map at 0.8
  scene.add(new THREE.AmbientLight(0xffffff, 0.12));
  for (const [intensity, x, y, z] of [[1.2, 2, 3, 2], [0.4, -2, 1, 1], [0.3, 0, 2, -3]]) {
    const light = new THREE.DirectionalLight(0xffffff, intensity);
    light.position.set(x, y, z);
    scene.add(light);
  }
  scene.environment = environment;
  scene.environmentIntensity = 0.8;
  return null;
}

function dispose(root) {
  root.traverse((node) => {
    if (node.geometry) node.geometry.dispose();
    for (const material of [].concat(node.material || [])) {
      for (const value of Object.values(material)) if (value && value.isTexture) value.dispose();
      material.dispose();
    }
  });
}

function cameraPosition(thetaDeg, phiDeg, radius) {  // θ=0 is the front (+Z), φ<0 is above
  const theta = (thetaDeg * Math.PI) / 180, phi = (phiDeg * Math.PI) / 180;
  return new THREE.Vector3(radius * Math.cos(phi) * Math.sin(theta), -radius * Math.sin(phi),
                           radius * Math.cos(phi) * Math.cos(theta));
}

// params: {kind: "js"|"glb", url, mode: "views"|"grid", thetas, phis, imgSize, camRadius, camFovDeg, gap,
// bgColor: "ffffff"|"808080", lighting: "follow"|"studio"} -> {data: [dataURL...] | dataURL} or {error}
window.judgeRender = async function judgeRender(params) {
  try {
    const { renderer, environment } = rendererFor(params.imgSize, params.lighting);
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(`#${params.bgColor}`);
    const follow = lightScene(scene, params.lighting, environment);
    const camera = new THREE.PerspectiveCamera(params.camFovDeg, 1.0, 0.01, 100);
    camera.up.set(0, 1, 0);
    const root = await loadObject(params.kind, params.url);
    scene.add(root);

    const shots = [];
    for (let i = 0; i < params.thetas.length; i++) {
      const position = cameraPosition(params.thetas[i], params.phis[i], params.camRadius);
      camera.position.copy(position);
      camera.lookAt(0, 0, 0);
      if (follow) {
        follow.position.copy(position).add(new THREE.Vector3(1, 1, 0));
        follow.lookAt(0, 0, 0);
      }
      renderer.render(scene, camera);
      if (params.mode === "grid") {
        const bitmap = document.createElement("canvas");  // a copy: the next render overwrites the buffer
        bitmap.width = bitmap.height = params.imgSize;
        bitmap.getContext("2d").drawImage(renderer.domElement, 0, 0);
        shots.push(bitmap);
      } else {
        shots.push(renderer.domElement.toDataURL("image/png"));
      }
    }
    dispose(root);
    if (params.mode !== "grid") return { data: shots };

    const cols = Math.ceil(Math.sqrt(shots.length)), rows = Math.ceil(shots.length / cols);
    const grid = document.createElement("canvas");
    grid.width = cols * params.imgSize + (cols - 1) * params.gap;
    grid.height = rows * params.imgSize + (rows - 1) * params.gap;
    const ctx = grid.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, grid.width, grid.height);
    shots.forEach((shot, i) => ctx.drawImage(shot, (i % cols) * (params.imgSize + params.gap),
                                             Math.floor(i / cols) * (params.imgSize + params.gap)));
    return { data: grid.toDataURL("image/png") };
  } catch (err) {
    return { error: err && err.message ? err.message : String(err) };
  }
};
window.__revision = THREE.REVISION;
window.__ready = true;
