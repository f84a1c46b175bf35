"""A grid cell: the Ray actor (:mod:`.cell`), its device context (:mod:`.contexts`, the "SDK
context": streams and events in :mod:`.events`), programs compiled for a device (:mod:`.compiled`),
actor creation and pools (:mod:`.pool`), and what it reports (:mod:`.metrics`, :mod:`.spans`)."""
