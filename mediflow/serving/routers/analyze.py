"""`POST /api/vision/analyze`: one chest X-ray in, its finding out (never a diagnosis)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mediflow.data.images import sniff_format
from mediflow.errors import ImageDecodeError
from mediflow.inference.input_check import InputRejected
from mediflow.inference.predictor import Predictor
from mediflow.serving.dependencies import (
    authenticated,
    get_inference,
    get_optional_store,
    get_predictor,
    get_settings,
    get_store_health,
    model_loaded,
)
from mediflow.serving.health import StoreHealth
from mediflow.serving.inference_thread import InferenceThread
from mediflow.serving.schemas import AnalysisResponse, ErrorResponse, RejectedResponse
from mediflow.serving.settings import Settings
from mediflow.serving.studies import record_analysis, record_refusal
from mediflow.serving.upload import read_file_field
from mediflow.store.db import Store

log = logging.getLogger("mediflow.serve")

UPLOAD_FIELD = "file"
ANALYZE_PATH = "/api/vision/analyze"
# Every route that takes an upload body: they share the in-flight limit (limits.py).
UPLOAD_PATHS = (ANALYZE_PATH,)

# The endpoint reads the body itself (see upload.py), so the multipart form is declared here for /docs.
UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": [UPLOAD_FIELD],
            "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary",
                                          "description": "chest X-ray, JPEG, PNG, WebP, TIFF or DICOM "
                                                         "(checked by content)"}},
        }}},
    }
}

router = APIRouter(tags=["analyze"], dependencies=[Security(authenticated), Depends(model_loaded)])


@router.post(ANALYZE_PATH, response_model=AnalysisResponse, openapi_extra=UPLOAD_OPENAPI,
             responses={400: {"model": ErrorResponse, "description": "empty, corrupt, truncated, oversized-in-pixels "
                                                                     "or non-image upload"},
                        408: {"model": ErrorResponse, "description": "the body did not arrive within the "
                                                                     "upload timeout, or arrived slower than "
                                                                     "the minimum upload rate"},
                        413: {"model": ErrorResponse, "description": "upload larger than the size limit"},
                        422: {"model": RejectedResponse, "description": "the input check refused the image (not a "
                                                                        "chest radiograph, or blank): no finding; "
                                                                        "or no `file` field"},
                        503: {"model": ErrorResponse, "description": "busy: the uploads in progress fill "
                                                                     "the upload memory, or too many are open "
                                                                     "(see the Retry-After header); the model is "
                                                                     "not loaded yet; or the study store failed"}})
async def analyze(request: Request,
                  preview: bool = Query(False, description="also return the decoded image as a PNG data URL "
                                                           "(at most 1024 px): browsers cannot show DICOM"),
                  heatmap: bool = Query(False, description="add `heatmap`: where the model looked (PNG data URL)"),
                  predictor: Predictor = Depends(get_predictor),
                  settings: Settings = Depends(get_settings),
                  inference: InferenceThread = Depends(get_inference),
                  store: Store | None = Depends(get_optional_store),
                  store_health: StoreHealth = Depends(get_store_health),
                  actor: str = Security(authenticated)) -> Any:
    """Multipart field `file`: a chest X-ray. Returns the finding; never a diagnosis."""
    try:
        data = await read_file_field(request, UPLOAD_FIELD, settings.max_upload_bytes,
                                     timeout_s=settings.upload_timeout_s)
    except HTTPException as exc:  # malformed multipart, oversized: details quote nothing from the body
        log.info("refused upload: %d %s", exc.status_code, exc.detail)
        raise
    except RequestValidationError:
        log.info("refused upload: 422 no '%s' field", UPLOAD_FIELD)
        raise
    refusal: InputRejected | None = None
    try:
        result, decoded = await inference.run(predictor.predict_upload, data, max_pixels=settings.max_pixels,
                                              preview=preview, heatmap=heatmap)
    except ImageDecodeError as exc:  # includes ImageTooLargeError (decompression bombs)
        # One line per refusal: the sniffed type and a reason that quotes nothing from the file.
        log.info("refused upload: %s, %s: %s", sniff_format(data) or "unknown type", type(exc).__name__, exc.reason)
        raise HTTPException(400, detail=str(exc)) from None
    except InputRejected as exc:
        refusal = exc
    if refusal is not None:
        log.info("refused upload: %s, input check: %s", sniff_format(data) or "unknown type",
                 ",".join(r["code"] for r in refusal.input_check["reasons"] if r["severity"] == "rejected"))
        body = {"detail": str(refusal), "input_check": refusal.input_check}
        if store is not None:
            body = await record_refusal(store, predictor, data, body, refusal.dicom_header)
        return JSONResponse(status_code=422, content=body)
    if store is None:
        return result
    return await record_analysis(request, store, store_health, predictor, actor, data, result, decoded.dicom_header)
