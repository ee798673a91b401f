"""The Gradio studio: one module per tab (model, explore, compress, runs, compare, download), each building its
components and then wiring its events; `services` holds the thin calls into compressor / storage / workers,
`figures` the plotly figures, `common` the error guard and formatting. `app.py` composes them. No torch math here.
"""
