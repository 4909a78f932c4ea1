from django.urls import path

from . import openai_api

urlpatterns = [
    path("chat/completions", openai_api.chat_completions, name="openai_chat_completions"),
    path("models", openai_api.models, name="openai_models"),
]
