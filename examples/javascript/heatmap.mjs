// Class activation maps in JavaScript with nothing but onnxruntime-node.
//
// The model was exported with `onnxcam export model.onnx -o model.cam.onnx --heatmaps all`, so
// the graph itself outputs finished heatmaps (ReLU'd, min-max normalised, resized to the input
// size): one `session.run` gives the prediction and every map.
//
//   npm install --ignore-scripts        # the CPU binaries ship inside the npm package
//   node heatmap.mjs model.cam.onnx input.f32 1 3 224 224 out.json
//
// input.f32: the preprocessed input tensor as raw little-endian float32 (NCHW here).
import { readFileSync, writeFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

const [modelPath, inputPath, ...rest] = process.argv.slice(2);
const outPath = rest.pop();
const dims = rest.map(Number);
const bytes = readFileSync(inputPath);
const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);

const session = await ort.InferenceSession.create(modelPath);
const inputName = session.inputNames[0]; // the image
// onnxcam's own inputs are optional (left out, they take their defaults); onnxruntime-node
// asks for every input, so feed the defaults: explain (mode 0) the top-1 class (-1), no seed
// (an empty [0, 1]: the one-hot of that class), no head rows (an empty tensor of the map's
// rank).
const feeds = { [inputName]: new ort.Tensor("float32", data, dims) };
for (const name of session.inputNames.slice(1)) {
  if (name === "onnxcam_mode") feeds[name] = new ort.Tensor("int64", BigInt64Array.from([0n]), []);
  else if (name === "onnxcam_target_class") feeds[name] = new ort.Tensor("int64", BigInt64Array.from([-1n]), [1]);
  else if (name === "onnxcam_seed") feeds[name] = new ort.Tensor("float32", new Float32Array(0), [0, 1]);
  else if (name.startsWith("onnxcam_head_input_")) feeds[name] = new ort.Tensor("float32", new Float32Array(0), [0, 1, 1, 1]);
}
const results = await session.run(feeds);

const out = { class: Array.from(results.onnxcam_class.data, Number), heatmaps: {} };
for (const name of session.outputNames.filter((n) => n.startsWith("onnxcam_heatmap_"))) {
  const t = results[name];
  out.heatmaps[name] = { dims: t.dims, data: Array.from(t.data) };
  let max = 0, at = 0;
  t.data.forEach((v, i) => { if (i < t.dims[1] * t.dims[2] && v > max) { max = v; at = i; } });
  console.log(`${name}: peak of image 0 at (x=${at % t.dims[2]}, y=${Math.floor(at / t.dims[2])})`);
}
writeFileSync(outPath, JSON.stringify(out));
