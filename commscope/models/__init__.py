"""Models commscope runs itself (the demo, `characterize`): small, real, parallel over torch.distributed.

`commscope.models.llama` imports torch; nothing here is imported by `import commscope`.
"""
