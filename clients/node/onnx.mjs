// Run a maas ONNX artifact in Node: tokenize like maas, run model.onnx with onnxruntime-node.
//
//   node onnx.mjs ARTIFACT_DIR TEXT [TEXT ...]
//
// ARTIFACT_DIR holds model.onnx and tokenizer.json (the compress stage's onnx variant, or a
// version folder of the model repository). Prints one JSON object: labels, class_ids and
// probabilities per text.
import path from "node:path";
import * as ort from "onnxruntime-node";
import { Tokenizer } from "./tokenizer.mjs";

export async function classifyWithOnnx(artifactDir, texts) {
  const tokenizer = Tokenizer.load(path.join(artifactDir, "tokenizer.json"));
  const session = await ort.InferenceSession.create(path.join(artifactDir, "model.onnx"));
  const ids = tokenizer.encode(texts);
  const input = new ort.Tensor("int32", ids, [texts.length, tokenizer.sequenceLength]);
  const results = await session.run({ [session.inputNames[0]]: input });
  const output = results[session.outputNames[0]];
  const classes = output.dims[1];
  const probabilities = texts.map((_, row) =>
    Array.from(output.data.slice(row * classes, (row + 1) * classes)),
  );
  const classIds = probabilities.map((row) => row.indexOf(Math.max(...row)));
  return {
    labels: classIds.map((id) => tokenizer.labels[id]),
    class_ids: classIds,
    probabilities,
    token_ids: Array.from(ids),
  };
}

async function main() {
  const [artifactDir, ...texts] = process.argv.slice(2);
  if (!artifactDir || texts.length === 0) {
    console.error("usage: node onnx.mjs ARTIFACT_DIR TEXT [TEXT ...]");
    process.exit(2);
  }
  console.log(JSON.stringify(await classifyWithOnnx(artifactDir, texts)));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((error) => {
    console.error(`error: ${error.message}`);
    process.exit(1);
  });
}
