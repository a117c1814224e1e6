"""Train stage: FSDP2 fine-tuning on TRAINING_ROW rows with token-level loss masks.

Split by who runs it. On the driver: `stage` (the Ray Train job, `python -m jobs.train`) and
`resume` (run identity, run folders, which checkpoint a run starts from). On every rank: `loop`
(the step and the loop, plain torch.distributed), started by `stage.ray_train_loop` on Ray Train
workers or by `torchrun` (`torchrun -m pipeline.train.torchrun ...`) without Ray. What the loop
uses: `data` (rows -> packed micro-batches), `model` (meta init, FSDP2, sharded HF loading, the
loss), `attention` (packed varlen attention), `checkpoint` (DCP state, HF export), `metrics` (the
MFU's peak FLOP/s, peak memory) and `tracking` (experiment tracking from rank 0).
"""
