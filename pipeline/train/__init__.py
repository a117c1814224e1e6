"""Train stage: FSDP2 fine-tuning on TRAINING_ROW rows with token-level loss masks.

Plain torch.distributed code (runs under Ray Train's TorchTrainer or under torchrun):
`data` (rows -> packed micro-batches), `model` (meta init, FSDP2, sharded HF loading, varlen
attention, the loss), `checkpoint` (DCP state, HF export), `loop` (the training loop).
"""
