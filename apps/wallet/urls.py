"""Billing pages, included by the dashboard under ``billing/`` (names join ``dashboard:``)."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.billing, name="billing"),
    path("return/", views.billing_return, name="billing_return"),
    path("purchases/<str:public_id>/", views.purchase_detail, name="billing_purchase"),
    path("purchases/<str:public_id>/receipt/", views.purchase_receipt, name="billing_receipt"),
    path("alert/", views.low_balance_alert, name="billing_alert"),
    path("ledger.csv", views.ledger_csv, name="billing_ledger_csv"),
]
