"""Report: Streamlit app, plotly figure builders and a static HTML page; reads run directories only."""
