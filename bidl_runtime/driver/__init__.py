"""The driver: the grid of cell actors it supervises (:mod:`.grid`: start, wire, run, heal, drain),
the stream of samples it feeds and collects (:mod:`.stream`), its health watch (:mod:`.health`), the
single-device reference it verifies against (:mod:`.reference`), and what a run leaves: report,
journal, trace, start-up accounting, keep-alive."""
