"""One merge as a record and as mergekit YAML (`recipe`), read back (`recipe_reader`), run by `mmmo merge`
(`recipe_run`), and a merged model saved as a Hugging Face folder (`save`)."""
