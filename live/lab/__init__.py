"""``python -m live lab``: a scenario on a real kernel network -- the lab itself (``lab``), the server
child it runs in one namespace (``serve_child``), the lines it talks to its children with
(``protocol``), the user-space link between the namespaces (``tunlink``) and bulk cross traffic
(``crosstraffic``)."""
