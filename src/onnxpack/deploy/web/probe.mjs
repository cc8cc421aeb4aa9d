// export-web's check, in Node: each candidate graph loaded by onnxruntime-web's WebAssembly build (the
// one the page ships) and run through classifier.mjs on real sentences, so the variant chosen is one
// that loads and answers there. Usage: node probe.mjs JOB.json, where JOB.json is {ort, tokenizers
// (paths of the modules), tokenizer, tokenizer_config (paths), manifest, variants: {name: model path},
// texts}. Prints {name: {load_ms, ms_per_row (the best of REPEATS runs), logits} or {error}} on one line.
import fs from "node:fs";
import {pathToFileURL} from "node:url";
import {Classifier} from "./classifier.mjs";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const ort = await import(pathToFileURL(job.ort).href);
const {Tokenizer} = await import(pathToFileURL(job.tokenizers).href);
ort.env.wasm.numThreads = 1;  // as in a page that is not cross-origin isolated
ort.env.logLevel = "fatal";
const read = (path) => (path ? JSON.parse(fs.readFileSync(path, "utf8")) : null);
const files = {tokenizer: read(job.tokenizer), tokenizerConfig: read(job.tokenizer_config), manifest: job.manifest};
const REPEATS = 3;
const report = {};
for (const [name, path] of Object.entries(job.variants)) {
  try {
    let started = performance.now();
    const classifier = await Classifier.create(ort, Tokenizer, {...files, model: fs.readFileSync(path)});
    const loadMs = performance.now() - started;
    await classifier.logits(job.texts.slice(0, 2));  // warm-up
    let best = Infinity, logits;
    for (let i = 0; i < REPEATS; i++) {  // the best of a few: other work on the machine only adds time
      started = performance.now();
      ({logits} = await classifier.logits(job.texts));
      best = Math.min(best, performance.now() - started);
    }
    report[name] = {load_ms: loadMs, ms_per_row: best / job.texts.length, logits};
  } catch (e) {
    report[name] = {error: String(e && e.message ? e.message : e).replace(/\s+/g, " ").trim()};
  }
}
process.stdout.write(JSON.stringify(report) + "\n");
