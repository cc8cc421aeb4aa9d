"""The HTTP front end: FastAPI on uvicorn. Nothing here imports grpc."""
