"""The reliability suite (issue 7): crashes, power loss, disk errors, damaged files, endpoint
faults, concurrent readers, bad input and secrets -- with nothing lost.

Modules:

    procs.py      the CLI in a child process (exec'd, or forked from a warm server), killed
                  with SIGKILL at a seeded moment
    invariants.py what must hold after a kill: the log's durable prefix, projections equal to a
                  rebuild, no durable reply requested again
    chains.py     one run killed again and again across resumes (the tests and bench/soak.py)
    oshim.py      backends for ``llm_ledger.ledger.fs`` (every file-system call): injected errors, and a disk
                  model that loses or garbles what was not synced (power loss)
    endpoints.py  a tiny OpenAI-compatible server that answers with broken replies

Every randomized test prints its seed on failure.
"""
