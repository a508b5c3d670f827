"""Everything that runs the model, lowest first: an example as chat tokens (`layout`), padded batches
(`batching`), the float32 output head (`logits`), kept prefixes (`kvcache`), greater's greedy decoding
(`decoding`), the `Generator` interface (`generation`, `backends/`), the teacher-forced pass with its
gradient (`gradient`) and the `Engine` the algorithm calls (`engine`); beside them batch sizes from free
memory (`memory`), device and dtype (`device`), loading a model (`model`) and a step's phase timer (`timing`).

Nothing here knows a search: `greater.optimizer` and `greater.methods` drive it through `Engine`.
"""
