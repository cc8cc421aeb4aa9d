// The exported page's runtime (app.js in the folder; classifier.js beside it): loads manifest.json, the tokenizer and the model from this folder,
// runs them with onnxruntime-web (WebAssembly) through classifier.mjs, and exposes
// window.onnxpack = {ready, predict(texts), respond(path, body)}. Nothing is fetched from elsewhere.
import * as ort from "./vendor/ort.wasm.min.js";
import {Tokenizer} from "./vendor/tokenizers.min.js";
import {Classifier} from "./classifier.js";

// The folder names every script .js, which any static server types as JavaScript (not all know .mjs).
ort.env.wasm.wasmPaths = {mjs: new URL("./vendor/ort-wasm-simd-threaded.js", import.meta.url).href,
                          wasm: new URL("./vendor/ort-wasm-simd-threaded.wasm", import.meta.url).href};
// Threads need SharedArrayBuffer, which only a cross-origin isolated page has (COOP and COEP headers).
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
ort.env.logLevel = "error";

const statusLine = document.getElementById("status");
const get = async (path, kind) => {
  const response = await fetch(new URL(path, import.meta.url));
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return kind === "bytes" ? new Uint8Array(await response.arrayBuffer()) : response.json();
};

const ready = (async () => {
  if (statusLine) statusLine.textContent = "Loading the model into this page…";
  const manifest = await get("manifest.json");
  const web = manifest.web;
  const [model, tokenizer, tokenizerConfig] = await Promise.all([
    get(web.model, "bytes"), get(web.tokenizer), web.tokenizer_config ? get(web.tokenizer_config) : null]);
  const classifier = await Classifier.create(ort, Tokenizer, {model, tokenizer, tokenizerConfig, manifest: web});
  if (statusLine) statusLine.textContent = `Ready: ${manifest.name} (${manifest.variant}) runs in this page.`;
  return classifier;
})();
ready.catch((e) => {
  if (statusLine) { statusLine.textContent = `The model did not load: ${e.message}`; statusLine.className = "error"; }
});

// The page's requests, answered as the server's /predict answers them: the same limits, the same
// messages, the same body ({predictions, truncated}).
async function respond(path, body) {
  const classifier = await ready;
  if (path !== "predict") throw new Error(`${path} is not available in the browser`);
  const root = classifier.manifest.pairs ? "pairs" : "texts";
  const texts = body[root];
  const {max_texts: maxTexts, max_chars: maxChars} = classifier.manifest.limits;
  if (texts.length > maxTexts) throw new Error(`${root}: at most ${maxTexts} per request, got ${texts.length}`);
  texts.forEach((text, i) => {
    const parts = Array.isArray(text) ? text : [text];
    parts.forEach((part, j) => {
      const length = Array.from(part).length;  // code points, as Python counts them
      if (length > maxChars) {
        throw new Error(`${root}[${i}]${parts.length > 1 ? `[${j}]` : ""}: at most ${maxChars} characters per text, got ${length}`);
      }
    });
  });
  const {logits, truncated} = await classifier.logits(texts);
  return {predictions: classifier.results(texts, logits),
          truncated: truncated.flatMap((cut, i) => (cut ? [i] : []))};
}

window.onnxpack = {ready, predict: async (texts) => (await ready).predict(texts), respond};
