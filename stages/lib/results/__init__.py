"""What the runs produce for people to read: metrics.py (accuracy as every metrics/*.json
holds it), history.py (plots/<model>.tsv), book.py (the book's figures), report.py and
figures.py (report/), markdown.py, summary.py (`make metrics`), seed_study.py."""
