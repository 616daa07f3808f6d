"""The study's report: summary tables, methods text, environment record, runtime table and figures."""
