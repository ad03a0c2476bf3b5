"""The Higgs audio tokenizer as open pieces (FORMATS.md §3–4).

resample.py    torchaudio's default windowed-sinc resampler (24k -> 16k for HuBERT) in plain torch
quantizer.py   ResidualVectorQuantizer: encode / decode(k) / trace (residuals, distances, running sum)
model.py       HiggsAudioCodec: DAC encoder + HuBERT branch -> fc_prior -> RVQ -> fc_post2 -> DAC decoder
codec.py       AudioTokenizer: any audio in, codes [n_q, T] out, and back (loaded by higgslab.load_tokenizer;
               its on-disk layouts live in higgslab.io.codec_format)
streaming.py   StreamingDecoder: chunked decode equal to the one-shot decode
stats.py       codebook usage, perplexity, dead codes; quality vs number of codebooks
"""
