"""Retrain: filled by the live-retraining work."""
import streamlit as st

st.title("Retrain")
