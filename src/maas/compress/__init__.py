"""Model compression: quantization, pruning, distillation, ONNX export, and their report.

- :mod:`maas.compress.graph`: the classifier rewritten without Keras masking, so TFLite
  fuses its LSTMs (fast, and quantizable to full integer).
- :mod:`maas.compress.quantize`: TFLite float32 / dynamic-range int8 / float16 / full-integer
  int8, and quantization-aware training of the Dense head.
- :mod:`maas.compress.prune`: magnitude pruning (tfmot) of the embedding, LSTM kernels and
  Dense kernel, fine-tuned, stripped, verified per layer.
- :mod:`maas.compress.distill`: a small student trained on the teacher's softened outputs,
  and the same student from scratch as the control.
- :mod:`maas.compress.onnx_export`: the teacher in ONNX (tf2onnx), run by onnxruntime.
- :mod:`maas.compress.variants`: builds each named variant in memory.
- :mod:`maas.compress.report`: sizes, latency, throughput, the table, the targets, the plots.
- :mod:`maas.compress.stage`: the stage: build, write, reload, check, evaluate, measure.

Every variant is an artifact folder ``models/compressed/<name>/`` that
:func:`maas.runtime.load_runtime` serves. Serving code never imports this package.
"""
