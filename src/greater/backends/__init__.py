"""Optional generation backends (the default is `greater.generation.TransformersGenerator`)."""
