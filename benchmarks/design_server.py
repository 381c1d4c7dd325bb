"""The original design's serving code path (README, "Where MediFlow started"): torchvision
EfficientNet-B0 in eager PyTorch after a full JPEG decode, rebuilt as the baseline for serving_benchmark.py.

torchvision EfficientNet-B0 (classifier -> Linear(1280, 2)) in eager PyTorch, the upload decoded at
full resolution with PIL, Resize((224, 224)) + ToTensor + Normalize(ImageNet), behind a FastAPI
`POST /api/vision/analyze` returning {prediction, confidence, disclaimer}. The weights are random:
torchvision's ImageNet weights cannot be downloaded here, and the timing does not depend on them.
This is a benchmark baseline, not part of MediFlow.

    python benchmarks/design_server.py --port 8001
"""

from __future__ import annotations

import argparse
import io

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torch import nn
from torchvision import models, transforms

CLASS_NAMES = ["NORMAL", "PNEUMONIA"]
DISCLAIMER = "AI-assisted preliminary reading. Clinical correlation required."


def build_model() -> nn.Module:
    model = models.efficientnet_b0(weights=None)
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, len(CLASS_NAMES))
    return model.eval()


TRANSFORM = transforms.Compose([
    transforms.Resize((224, 224)),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])


def create_app() -> FastAPI:
    app = FastAPI(title="design baseline")
    model = build_model()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/api/vision/analyze")
    async def analyze(file: UploadFile = File(...)) -> dict:
        contents = await file.read()
        image = Image.open(io.BytesIO(contents)).convert("RGB")
        tensor = TRANSFORM(image).unsqueeze(0)
        with torch.no_grad():
            outputs = model(tensor)
            probs = torch.softmax(outputs, dim=1)[0]
        idx = int(probs.argmax())
        return {"prediction": CLASS_NAMES[idx], "confidence": round(float(probs[idx]), 4), "disclaimer": DISCLAIMER}

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    a = ap.parse_args()
    uvicorn.run(create_app(), host=a.host, port=a.port, log_level="warning", access_log=False)
