"""`mars-bench report`: rankings, plots and regressions from result directories, as Markdown and as a static
HTML leaderboard. load (runs -> load points), leaderboard (rankings), regressions (two result sets),
plots and timelines (figures), doc and render (the document and its two formats), build (all of it)."""
