"""bidl-grid's distribution-level helpers: the supported torch / Ray versions (``versions``) and the
console-script entry points (``cli``). Imports nothing heavy, so both work before torch or Ray load."""
