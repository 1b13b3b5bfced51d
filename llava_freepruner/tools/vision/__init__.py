"""Vision-side tools beyond LLaVA: any supported ViT, selection overlays, fidelity proxies."""
