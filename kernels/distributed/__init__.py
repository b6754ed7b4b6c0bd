"""Several GPUs, one replica: the tensor-parallel step (``tp``) and the
collectives' timings (``comm``). Importing this package imports nothing
heavy; its modules need torch (and ``torch.distributed``)."""
