"""Stateful code execution: contexts (a long-lived kernel each) inside sandboxes.

    Interpreter            node-wide: the ZMQ context, limits; makes one CodeContexts per sandbox
    └── CodeContexts       one sandbox's contexts (default per language, created, listed, removed)
        └── CodeContext    one kernel: started lazily, restarted when hung, runs one execution at a time
            └── Kernel     JupyterKernel (Python: ipykernel over unix-socket ZMQ) or RunnerKernel
                           (JavaScript, bash: a lean runner over the process's stdio)

Kernels are sandbox processes started through `SandboxDriver.exec`, confined like every command,
so they die with their sandbox.
"""
