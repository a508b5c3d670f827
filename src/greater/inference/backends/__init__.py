"""Optional generation backends (the default is `greater.inference.generation.TransformersGenerator`)."""
