"""The foundation every layer may import: errors (`errors`), the per-row error rule (`row_errors`), devices and
dtypes (`devices`), lazy package faces (`lazy`) and moved-module aliases (`moved`). Imports nothing above it."""
