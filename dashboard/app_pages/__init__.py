"""One module per dashboard page; `dashboard/streamlit_app.py` routes to them."""
