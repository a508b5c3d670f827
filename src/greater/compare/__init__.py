"""`greater compare`: methods × tasks × seeds. `cells` runs the missing cells (in this process, or on Ray
through `cluster`) and writes them; `table` reads the finished cells into table.json, table.md and the
chart; `stats` holds the pure statistics the table and report.html use.
"""
