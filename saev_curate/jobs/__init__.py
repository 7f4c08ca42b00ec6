"""The main jobs on the testbed and what they share: `demo` (score, detect, select), `pipeline` (score, select, DPO,
evaluate), `detection` (every method's scores and AUROC per defect kind, also the detection benchmark's core) and
`report` (their HTML pages). The top of the import graph: nothing in the library imports a job."""
