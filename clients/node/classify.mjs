// Classify texts with a maas server from Node.js: the Open Inference Protocol over gRPC
// (@grpc/grpc-js with KServe's grpc_predict_v2.proto) or over REST (plain fetch).
//
//   node classify.mjs --grpc 127.0.0.1:8500 [--ca ca.pem] [--key KEY] TEXT [TEXT ...]
//   node classify.mjs --rest http://127.0.0.1:8501 [--key KEY] TEXT [TEXT ...]
//
// Options: --model NAME (default classifier), --version N (default: the newest). Over TLS,
// gRPC takes the CA with --ca; fetch takes it from NODE_EXTRA_CA_CERTS=ca.pem. The key, if
// the server needs one, goes in `authorization: Bearer KEY`. Prints one JSON object.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTO = fileURLToPath(
  new URL("../../src/maas/serving/grpc/grpc_predict_v2.proto", import.meta.url),
);

function inferenceClient(target, caFile) {
  const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, defaults: true });
  const { inference } = grpc.loadPackageDefinition(definition);
  const credentials = caFile
    ? grpc.credentials.createSsl(readFileSync(caFile))
    : grpc.credentials.createInsecure();
  return new inference.GRPCInferenceService(target, credentials);
}

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

// One result shape for both protocols: {model, version, labels, class_ids, probabilities}.
function result(protocol, model, version, outputs, count) {
  const probabilities = outputs.probabilities;
  const classes = probabilities.length / count;
  return {
    protocol,
    model,
    version,
    labels: outputs.labels,
    class_ids: outputs.class_ids,
    probabilities: Array.from({ length: count }, (_, row) =>
      probabilities.slice(row * classes, (row + 1) * classes),
    ),
  };
}

export async function classifyGrpc({ target, ca, key, model, version }, texts) {
  const client = inferenceClient(target, ca);
  const metadata = new grpc.Metadata();
  if (key) metadata.set("authorization", `Bearer ${key}`);
  try {
    const reply = await call(
      client,
      "ModelInfer",
      {
        model_name: model,
        model_version: version ?? "",
        inputs: [
          {
            name: "texts",
            datatype: "BYTES",
            shape: [texts.length],
            contents: { bytes_contents: texts.map((text) => Buffer.from(text, "utf8")) },
          },
        ],
      },
      metadata,
    );
    const outputs = {};
    for (const tensor of reply.outputs) {
      const contents = tensor.contents;
      if (tensor.name === "labels") outputs.labels = contents.bytes_contents.map(String);
      if (tensor.name === "class_ids") outputs.class_ids = contents.int_contents;
      if (tensor.name === "probabilities") outputs.probabilities = contents.fp32_contents;
    }
    return result("grpc", reply.model_name, reply.model_version, outputs, texts.length);
  } finally {
    client.close();
  }
}

export async function classifyRest({ url, key, model, version }, texts) {
  const path = version ? `/v2/models/${model}/versions/${version}/infer` : `/v2/models/${model}/infer`;
  const headers = { "content-type": "application/json" };
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(new URL(path, url), {
    method: "POST",
    headers,
    body: JSON.stringify({
      inputs: [{ name: "texts", datatype: "BYTES", shape: [texts.length], data: texts }],
    }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${body.error}`);
  const outputs = Object.fromEntries(body.outputs.map((tensor) => [tensor.name, tensor.data]));
  return result("rest", body.model_name, body.model_version, outputs, texts.length);
}

async function main() {
  const { values, positionals: texts } = parseArgs({
    allowPositionals: true,
    options: {
      grpc: { type: "string" },
      rest: { type: "string" },
      ca: { type: "string" },
      key: { type: "string" },
      model: { type: "string", default: "classifier" },
      version: { type: "string" },
    },
  });
  if (Boolean(values.grpc) === Boolean(values.rest) || texts.length === 0) {
    console.error("usage: node classify.mjs (--grpc HOST:PORT | --rest URL) [options] TEXT ...");
    process.exit(2);
  }
  const options = { ...values, target: values.grpc, url: values.rest };
  const answer = values.grpc
    ? await classifyGrpc(options, texts)
    : await classifyRest(options, texts);
  console.log(JSON.stringify(answer));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((error) => {
    // A gRPC error carries its status code name (e.g. UNAUTHENTICATED) and the server's words.
    const code = error.code !== undefined ? `${grpc.status[error.code]}: ` : "";
    console.error(`error: ${code}${error.details ?? error.message}`);
    process.exit(1);
  });
}
