"""Scoring a whole catalogue: an exported classifier over a folder, a list of paths or URLs, or an S3 prefix.

``sources`` lists and reads the images, ``engine`` scores them (the tuned local pipeline, and the loop that
writes a resumable results file), ``results`` writes and resumes JSON Lines, CSV and Parquet, and
``ray_runner`` runs the same engine on a Ray cluster. Nothing here knows about projects or the database:
the service layer hands it an exported model (``tagvision.service.scoring``).
"""
