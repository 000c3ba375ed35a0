"""A small Sphinx extension for the fgr book: each script is included once per page.

jupyter-book 1.x registers sphinx-thebe's configuration script twice, which makes every page throw
"Identifier 'THEBE_JS_URL' has already been declared" in the browser; dropping exact duplicates fixes it.
"""


def dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get('script_files', []):
        # an inline script is registered once with filename None and once with '': compare what the page gets
        key = (getattr(script, 'filename', script) or '', repr(sorted(getattr(script, 'attributes', {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context['script_files'] = unique


def setup(app):
    app.connect('html-page-context', dedupe_scripts, priority=900)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
