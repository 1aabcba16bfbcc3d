// pgjdbc against strata's PostgreSQL front end. Usage: java -cp postgresql.jar Jdbc.java URL PASSWORD
// Prints one line per check and exits non-zero on the first failure.

import java.sql.*;
import java.util.Properties;

public class Jdbc {
    static void check(String name, boolean ok, Object detail) {
        System.out.println((ok ? "ok   " : "FAIL ") + name + (ok ? "" : ": " + detail));
        if (!ok) System.exit(1);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "analyst");
        props.setProperty("password", args[1]);
        // Use server-side prepared statements from the first execution.
        props.setProperty("prepareThreshold", "1");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*) AS n FROM orders")) {
                check("a query", rs.next() && rs.getLong("n") > 0, "no rows");
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT count(*) AS n FROM orders WHERE json_get_str(data, 'country') = ?")) {
                long total = 0;
                for (int i = 0; i < 5; i++) {
                    ps.setString(1, i % 2 == 0 ? "NL" : "DE");
                    try (ResultSet rs = ps.executeQuery()) {
                        check("prepared statement run " + i, rs.next(), "no row");
                        total += rs.getLong(1);
                    }
                }
                check("prepared statement counts", total > 0, total);
            }
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(7);
                int n = 0;
                try (ResultSet rs = st.executeQuery("SELECT time, key, data FROM orders")) {
                    while (rs.next()) {
                        n++;
                        rs.getTimestamp(1);
                    }
                }
                check("setFetchSize reads every row in batches", n > 7, n);
            }
            conn.commit();
            conn.setAutoCommit(true);
            DatabaseMetaData meta = conn.getMetaData();
            boolean found = false;
            try (ResultSet rs = meta.getTables(null, null, "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) found |= rs.getString("TABLE_NAME").equals("orders");
            }
            check("getTables lists orders", found, "orders missing");
            int columns = 0;
            try (ResultSet rs = meta.getColumns(null, null, "orders", "%")) {
                while (rs.next()) columns++;
            }
            check("getColumns of orders", columns >= 7, columns);
            try (ResultSet rs = meta.getPrimaryKeys(null, null, "orders")) {
                while (rs.next()) { }
            }
            check("getPrimaryKeys answers", true, "");
            // What a database browser asks of a table and a schema beside its columns (DBeaver's
            // references and indexes tabs, generic JDBC tools): empty is fine, an error is not.
            try (ResultSet rs = meta.getImportedKeys(null, "public", "orders")) {
                while (rs.next()) { }
            }
            try (ResultSet rs = meta.getExportedKeys(null, "public", "orders")) {
                while (rs.next()) { }
            }
            try (ResultSet rs = meta.getCrossReference(null, "public", "orders", null, "public", "by_country")) {
                while (rs.next()) { }
            }
            try (ResultSet rs = meta.getIndexInfo(null, "public", "orders", false, true)) {
                while (rs.next()) { }
            }
            try (ResultSet rs = meta.getProcedures(null, "public", "%")) {
                while (rs.next()) { }
            }
            int functions = 0;
            try (ResultSet rs = meta.getFunctions(null, "pg_catalog", "concat")) {
                while (rs.next()) functions++;
            }
            check("getFunctions lists pg_catalog.concat", functions == 1, functions);
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) { }
            }
            try (ResultSet rs = meta.getTypeInfo()) {
                while (rs.next()) { }
            }
            check("keys, indexes, procedures, schemas and types answer", true, "");
            System.out.println("all JDBC checks passed");
        }
    }
}
