"""Reconstruction (B1): noise models, diffusion schedules and denoising by entering the reverse chain.

Built so far: the pure pieces (noise, schedule, the three denoising methods, classifier-free guidance).
"""
