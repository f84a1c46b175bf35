"""The control plane's Ray side: the embedded or joined cluster with token auth (:mod:`.ray_cluster`),
its devices as the planner sees them (:mod:`.nodes`), and shipping artifacts to nodes (:mod:`.ship`)."""
