"""OpenAI's error shape, so an OpenAI client raises the right exception with our message."""

from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    """A request the server refuses: `status` and the body {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(status: int, message: str, code: Optional[str] = None) -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, message, kind, code=code).body()
