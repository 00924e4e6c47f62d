"""The wiring of a run for the command line and the library: the input and where results go
(:mod:`~llmbatch.app.inputs`), checking it (:mod:`~llmbatch.app.validation`, with a cached rerun's
leading hits answered in the same pass by :mod:`~llmbatch.app.prefix`), a whole run
(:mod:`~llmbatch.app.run`), recovery of an earlier run's paid answers
(:mod:`~llmbatch.app.recovery`) and the plan (:mod:`~llmbatch.app.plan`).
"""
