"""An OpenAI-compatible speech server over a `ContinuousBatcher`: `python -m higgslab.serve` (`__main__`),
`create_app` (`app`) for a Generator already loaded, e.g. in a test or a notebook.

    POST /v1/audio/speech   OpenAI's request shape (+ seed, temperature, top_k, top_p, cfg_scale, scene,
                            max_new_tokens); a whole wav/pcm/flac file, or streamed (stream / stream_format)
    GET  /v1/models         the one model served
    GET  /health            ok while the batcher runs
    GET  /metrics           Prometheus text: requests by outcome, queue, busy rows, frames/s, time to audio
"""
