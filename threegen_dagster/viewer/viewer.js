// The generation viewer: the mesh (GLB, three.js) and the splat (Niantic SPZ or 3DGS PLY, Spark) side by side, each
// turnable with the mouse; turning one turns the other. Everything it shows is embedded in the page
// (base64 in <script type="application/octet-stream"> elements); it fetches nothing.
// Sets window.__viewerReady (and body[data-state]) once both have drawn, or window.__viewerError.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

const BACKGROUND = new THREE.Color(0x1d2027);
const FRAMES_BEFORE_READY = 20; // Spark sorts in a worker: let a few frames pass after loading
const views = [];

function embedded(id) {
  const element = document.getElementById(id);
  const text = element ? element.textContent.trim() : "";
  if (!text) return null;
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function say(panel, text) {
  panel.querySelector(".note").textContent = text;
}

function makeView(panel) {
  const canvas = panel.querySelector("canvas");
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  const scene = new THREE.Scene();
  scene.background = BACKGROUND;
  const camera = new THREE.PerspectiveCamera(35, 1, 0.01, 100);
  const controls = new OrbitControls(camera, canvas);
  const view = { panel, canvas, renderer, scene, camera, controls, distance: 3 };
  controls.addEventListener("change", () => follow(view));
  views.push(view);
  return view;
}

// Turning one view turns the others: same direction from their own target, at their own distance.
let following = false;
function follow(source) {
  if (following) return;
  following = true;
  const direction = source.camera.position.clone().sub(source.controls.target).normalize();
  for (const view of views) {
    if (view === source) continue;
    const distance = view.camera.position.distanceTo(view.controls.target);
    view.camera.position.copy(view.controls.target).addScaledVector(direction, distance);
    view.controls.update();
  }
  following = false;
}

function fit(view, box) {
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const radius = Math.max(sphere.radius, 1e-3);
  const distance = (radius / Math.sin(THREE.MathUtils.degToRad(view.camera.fov / 2))) * 1.05;
  const direction = new THREE.Vector3().setFromSphericalCoords(1, THREE.MathUtils.degToRad(70), THREE.MathUtils.degToRad(30));
  view.controls.target.copy(sphere.center);
  view.camera.position.copy(sphere.center).addScaledVector(direction, distance);
  view.camera.near = distance / 100;
  view.camera.far = distance * 10;
  view.camera.updateProjectionMatrix();
  view.controls.update();
}

function resize() {
  for (const { canvas, renderer, camera } of views) {
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.floor(width * renderer.getPixelRatio()) || canvas.height !== Math.floor(height * renderer.getPixelRatio())) {
      renderer.setSize(width, height, false);
      camera.aspect = width / Math.max(height, 1);
      camera.updateProjectionMatrix();
    }
  }
}

async function showMesh(panel) {
  const bytes = embedded("mesh-data");
  if (!bytes) return say(panel, "no mesh stored for this generation");
  const view = makeView(panel);
  view.scene.add(new THREE.HemisphereLight(0xffffff, 0x505050, 0.9));
  const light = new THREE.DirectionalLight(0xffffff, 1.2);
  view.camera.add(light);
  view.scene.add(view.camera);
  const gltf = await new GLTFLoader().parseAsync(bytes.buffer, "");
  if (!(gltf.parser.json.materials || []).length) {
    // a mesh with vertex colours and no material (what trimesh writes) gets glTF's default material,
    // which is fully metallic: black without an environment map. Show its colours as a matte surface.
    gltf.scene.traverse((node) => { if (node.isMesh) { node.material.metalness = 0; node.material.roughness = 0.8; } });
  }
  view.scene.add(gltf.scene);
  fit(view, new THREE.Box3().setFromObject(gltf.scene));
}

async function showSplat(panel) {
  const bytes = embedded("splat-data");
  if (!bytes) return say(panel, "no splat stored for this generation");
  const view = makeView(panel);
  view.scene.add(new SparkRenderer({ renderer: view.renderer }));
  const type = document.getElementById("splat-data").dataset.type === "spz" ? "spz" : "ply";
  const splat = new SplatMesh({ fileBytes: bytes, fileType: type, fileName: `splat.${type}` });
  if (document.body.dataset.frame === "y_down") splat.quaternion.set(1, 0, 0, 0); // 180 degrees about x
  view.scene.add(splat);
  await splat.initialized;
  splat.updateMatrixWorld(true);
  fit(view, splat.getBoundingBox(true).applyMatrix4(splat.matrixWorld));
}

function failed(error) {
  window.__viewerError = String(error && error.stack ? error.stack : error);
  document.body.dataset.state = "error";
  document.getElementById("status").textContent = `cannot show this generation: ${error}`;
  console.error(error);
}

async function main() {
  const loads = [showMesh(document.getElementById("mesh")), showSplat(document.getElementById("splat"))];
  let frames = 0;
  function draw() {
    resize();
    for (const { renderer, scene, camera } of views) renderer.render(scene, camera);
    if (++frames === FRAMES_BEFORE_READY + 1 && loaded) {
      window.__viewerReady = true;
      document.body.dataset.state = "ready";
      document.getElementById("status").textContent = "drag to turn, scroll to zoom, right-drag to pan";
    } else if (!loaded) {
      frames = 0;
    }
    requestAnimationFrame(draw);
  }
  let loaded = false;
  requestAnimationFrame(draw);
  await Promise.all(loads);
  loaded = true;
}

main().catch(failed);
