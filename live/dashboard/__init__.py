"""``python -m live dashboard``: the launcher (``launch``), the Streamlit page (``app``) and what it reads
from a recording (``data``)."""
